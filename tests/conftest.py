"""Shared fixtures: one real sandbox node per engine for the whole session.

Integration tests take the ``cluster`` fixture and so run once on OpenSearch 2.x, once on
Elasticsearch 8.x, and once on OpenSearch 3.x where a Java 21+ runtime exists, each started by
indexshift's own sandbox. ``INDEXSHIFT_TEST_URL`` runs them
against an existing cluster instead; ``INDEXSHIFT_TEST_ENGINES=opensearch`` narrows the set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from indexshift import command, sandbox
from indexshift.cluster import Cluster
from indexshift.config import ConnectionConfig
from indexshift.errors import EnvironmentProblem

# Sandboxes started by tests live in a folder of their own, away from a developer's sandbox and
# reachable by the unprivileged user that runs the engines when we are root. The sandbox reads
# the variable when a cluster starts, so setting it after the imports is soon enough.
_OWN_SANDBOX_DIR: Path | None = None
if "INDEXSHIFT_SANDBOX_DIR" not in os.environ:
    _OWN_SANDBOX_DIR = Path(tempfile.mkdtemp(prefix="indexshift-test-"))
    _OWN_SANDBOX_DIR.chmod(0o755)
    os.environ["INDEXSHIFT_SANDBOX_DIR"] = str(_OWN_SANDBOX_DIR)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _stop_started()
    if _OWN_SANDBOX_DIR is not None:
        shutil.rmtree(_OWN_SANDBOX_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Honour ``@pytest.mark.engines(...)``: tests of tools whose cluster calls do not differ
    between major versions run on one engine of each kind, not on every version, to keep
    the suite's time in check. What is left out is reported as deselected, never hidden."""
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("engines")
        callspec = getattr(item, "callspec", None)
        engine = None
        if callspec is not None:
            engine = callspec.params.get("node", callspec.params.get("reindex_node"))
        if marker is not None and engine not in (None, "external") \
                and engine not in marker.args:
            left_out.append(item)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


# Test engine id → (engine, version). OpenSearch 3.x needs Java 21+: it joins the matrix when
# this machine has such a runtime (the default machine ships one beside Java 17).
TEST_ENGINES: dict[str, tuple[str, str | None]] = {
    "opensearch": ("opensearch", None),
    "elasticsearch": ("elasticsearch", None),
    "opensearch3": ("opensearch", "3.8.0"),
}


def _has_java(major: int) -> bool:
    try:
        sandbox.find_java(major)
    except EnvironmentProblem:
        return False
    return True


_default_engines = "opensearch,elasticsearch" + (",opensearch3" if _has_java(21) else "")
ENGINES = [e.strip() for e in os.environ.get("INDEXSHIFT_TEST_ENGINES",
                                             _default_engines).split(",") if e.strip()]


@dataclass(frozen=True)
class Node:
    """A running test cluster: its engine name, URL and sandbox name (None when external)."""

    engine: str
    url: str
    sandbox_name: str | None
    version: str

    @property
    def config(self) -> ConnectionConfig:
        return ConnectionConfig(url=self.url, timeout_s=30)


_EXTERNAL = os.environ.get("INDEXSHIFT_TEST_URL")
# Engines whose sandbox has _reindex, painless and ingest pipelines (see the README).
REINDEX_ENGINES = [e for e in ENGINES if TEST_ENGINES[e][0] == "opensearch"]
_started: dict[str, Node] = {}


def _node_for(engine_id: str) -> Node:
    """One sandbox per engine for the whole session, shared by every fixture that needs it."""
    if engine_id == "external":
        assert _EXTERNAL is not None
        with Cluster.connect(ConnectionConfig(url=_EXTERNAL)) as cluster:
            return Node(cluster.engine.engine, _EXTERNAL, None, cluster.engine.version)
    if engine_id not in _started:
        engine, version = TEST_ENGINES[engine_id]
        name = f"pytest-{engine_id}"
        up = sandbox.UpRequest(engine=engine, version=version, name=name,  # type: ignore[arg-type]
                               http_port=0)
        report = command.sandbox_up(up)
        _started[engine_id] = Node(engine, report["url"], name, report["version"])
    return _started[engine_id]


def _stop_started() -> None:
    for started in _started.values():
        if started.sandbox_name is not None:
            command.sandbox_down(started.sandbox_name, wipe=True)
    _started.clear()


@pytest.fixture(scope="session", params=["external"] if _EXTERNAL else ENGINES)
def node(request: pytest.FixtureRequest) -> Node:
    return _node_for(str(request.param))


@pytest.fixture(scope="session", params=["external"] if _EXTERNAL else REINDEX_ENGINES)
def reindex_node(request: pytest.FixtureRequest) -> Node:
    """A node whose engine copies server-side (``_reindex``, painless, ingest pipelines)."""
    return _node_for(str(request.param))


@pytest.fixture
def cluster(node: Node) -> Iterator[Cluster]:
    with Cluster.connect(node.config) as connected:
        yield connected


@pytest.fixture
def reindex_cluster(reindex_node: Node) -> Iterator[Cluster]:
    with Cluster.connect(reindex_node.config) as connected:
        yield connected


def _fresh_name_cleaned_up(cluster: Cluster) -> Iterator[str]:
    name = f"it-{uuid.uuid4().hex[:10]}"
    yield name
    for row in cluster.indices(f"{name}*"):
        cluster.delete_index(str(row["index"]))


@pytest.fixture
def alias_name(cluster: Cluster) -> Iterator[str]:
    """A fresh alias name; every index named after it is deleted when the test ends."""
    yield from _fresh_name_cleaned_up(cluster)


@pytest.fixture
def reindex_alias(reindex_cluster: Cluster) -> Iterator[str]:
    """As ``alias_name``, on a node that copies server-side."""
    yield from _fresh_name_cleaned_up(reindex_cluster)
