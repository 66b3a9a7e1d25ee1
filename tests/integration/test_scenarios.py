"""Every scenario folder, migrated while a writer keeps writing, ends in an exact diff."""

from pathlib import Path

import pytest

from indexshift import command, migrator
from indexshift.cluster import Cluster
from indexshift.journal import Phase, RunStatus
from tests.conftest import Node
from tests.integration.migration_support import (
    SCENARIOS,
    Writer,
    assert_alias_matches_model,
    build_blue,
    load_source,
    write_migration,
    written_to,
)

pytestmark = pytest.mark.cluster

CASES = sorted(p.name for p in SCENARIOS.iterdir() if (p / "migration.yaml").exists())


@pytest.mark.parametrize("case", CASES)
def test_scenario_under_concurrent_writes(case: str, reindex_node: Node,
                                          reindex_cluster: Cluster, reindex_alias: str,
                                          tmp_path: Path) -> None:
    folder = SCENARIOS / case
    source = load_source(folder)
    blue = build_blue(reindex_cluster, reindex_alias, source)
    spec_path = write_migration(folder, reindex_alias, tmp_path / "migrations")
    writer = Writer(reindex_node.config, reindex_alias, source)
    writer.start()
    try:
        report = command.migrate(reindex_node.config, tmp_path / "migrations",
                                 migrator.RunOptions(yes=True, take_backup=False))
    finally:
        writer.stop()
    run = report["runs"][0]
    assert report["completed"], run.get("error")
    assert run["phase"] == str(Phase.COMPLETED) and run["status"] == str(RunStatus.COMPLETED)
    targets = reindex_cluster.alias_targets(reindex_alias)
    assert list(targets) == [run["green"]] and run["blue"] == blue
    assert writer.acknowledged > 0
    assert_alias_matches_model(reindex_cluster, reindex_alias, writer.model, spec_path,
                               untransformed=written_to(writer, run["green"]))
    switched = next(c for c in run["checkpoints"] if c["phase"] == str(Phase.ALIAS_SWITCHED))
    assert switched["details"]["write_block_ms"] >= 0
