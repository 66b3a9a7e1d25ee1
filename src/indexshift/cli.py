"""The command line: parse arguments, call one verb in ``command``, render the result.

Rich for people, ``--json`` for scripts. Errors print one line on stderr and exit with the
code of the error's class (see ``errors.ExitCode``); no traceback unless ``INDEXSHIFT_DEBUG``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from indexshift import __version__, command, sandbox
from indexshift.config import ConnectionConfig, resolve_connection
from indexshift.errors import ExitCode, IndexshiftError

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

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")


def fails_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """Turn indexshift errors into one line on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except IndexshiftError as exc:
            if os.environ.get("INDEXSHIFT_DEBUG"):
                raise
            err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

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


def connection(url: str | None, username: str | None, password: str | None,
               api_key: str | None, ca_bundle: Path | None, insecure: bool,
               timeout: float | None) -> ConnectionConfig:
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
    url: UrlOpt = None, username: UserOpt = None, password: PasswordOpt = None,
    api_key: ApiKeyOpt = None, ca_bundle: CaOpt = None, insecure: InsecureOpt = False,
    timeout: TimeoutOpt = None, as_json: JsonOpt = False,
) -> None:
    """Engine, version, health, nodes, disk, indices and aliases of a cluster."""
    config = connection(url, username, password, api_key, ca_bundle, insecure, timeout)
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
    url: UrlOpt = None, username: UserOpt = None, password: PasswordOpt = None,
    api_key: ApiKeyOpt = None, ca_bundle: CaOpt = None, insecure: InsecureOpt = False,
    timeout: TimeoutOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create the runbook's file-index alias over realistic documents built from real files."""
    config = connection(url, username, password, api_key, ca_bundle, insecure, timeout)
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


@app.command()
def version() -> None:
    """Print indexshift's version."""
    out.print(__version__)


def main() -> None:
    app()
