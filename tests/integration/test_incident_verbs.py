"""The first-five-minutes verbs as an operator runs them: evidence, halt, incident, report."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from indexshift.cluster import Cluster
from indexshift.incident import incident_doc_id
from indexshift.journal import JOURNAL_INDEX
from tests.conftest import Node
from tests.helpers import run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.engines("opensearch", "elasticsearch")]

PASSWORD = "Sup3r-s3cret-pw"


def test_evidence_bundle_from_the_cli_holds_no_password(node: Node, cluster: Cluster,
                                                        alias_name: str,
                                                        tmp_path: Path) -> None:
    cluster.create_index(f"{alias_name}-v1", {"settings": {"number_of_replicas": 0}})
    cluster.update_aliases([{"add": {"index": f"{alias_name}-v1", "alias": alias_name}}])
    result = run_cli("evidence", "--out", str(tmp_path), "--alias", alias_name, "--url",
                     node.url, "--username", "ops", "--password", PASSWORD, "--json")
    assert result.code == 0, result.stderr
    bundle = Path(json.loads(result.stdout)["path"])
    assert bundle.stat().st_mode & 0o777 == 0o700
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert {"cat-indices.txt", "cat-aliases.txt", "cluster-health.json", "tasks.json",
            "mappings.json", "manifest.json"} <= {p.name for p in files}
    secret_forms = [PASSWORD, base64.b64encode(f"ops:{PASSWORD}".encode()).decode()]
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path
        text = path.read_text(errors="replace")
        for secret in secret_forms:
            assert secret not in text, f"{path} holds a credential"
    assert PASSWORD not in result.stdout + result.stderr


def test_halt_renders_its_plan_and_what_it_did_from_the_same_keys(
        node: Node, cluster: Cluster, alias_name: str) -> None:
    index = f"{alias_name}-v1"
    cluster.create_index(index, {"settings": {"number_of_replicas": 0}})
    cluster.update_aliases([{"add": {"index": index, "alias": alias_name}}])
    plan = run_cli("halt", alias_name, "--freeze-writes", "--dry-run", "--url", node.url)
    assert plan.code == 0, plan.stderr
    assert f"would block writes on {index}" in plan.stdout
    done = run_cli("halt", alias_name, "--freeze-writes", "--url", node.url)
    try:
        assert done.code == 0, done.stderr
        assert f"did block writes on {index}" in done.stdout
    finally:
        released = run_cli("halt", alias_name, "--release", "--unfreeze-writes", "--url",
                           node.url)
        assert released.code == 0, released.stderr
    assert f"did close the breaker of run -; unblock writes on {index}" in released.stdout


def test_halt_plan_incident_timeline_and_report(node: Node, cluster: Cluster,
                                                alias_name: str) -> None:
    index = f"{alias_name}-v1"
    cluster.create_index(index, {"settings": {"number_of_replicas": 0}})
    cluster.update_aliases([{"add": {"index": index, "alias": alias_name}}])
    plan = run_cli("halt", alias_name, "--freeze-writes", "--dry-run", "--url", node.url,
                   "--json")
    assert plan.code == 0, plan.stderr
    assert json.loads(plan.stdout)["block_writes"] == [index]
    cluster.put_doc(index, "still-writable", {"n": 1})  # the dry run blocked nothing

    started = run_cli("incident", "start", alias_name, "--severity", "P1", "--summary",
                      "copy died halfway", "--failed-at", "2026-01-01T00:00:00Z",
                      "--url", node.url, "--json")
    assert started.code == 0, started.stderr
    incident_id = json.loads(started.stdout)["incident_id"]
    try:
        noted = run_cli("incident", "note", incident_id, "restored the 3 missing docs",
                        "--url", node.url, "--json")
        assert noted.code == 0, noted.stderr
        resolved = run_cli("incident", "resolve", incident_id, "--docs-lost", "0",
                           "--rollback", "--rollback-ok", "--url", node.url, "--json")
        assert resolved.code == 0, resolved.stderr
        shown = json.loads(run_cli("incident", "show", incident_id, "--url", node.url,
                                   "--json").stdout)
        assert shown["status"] == "RESOLVED"
        assert any("3 missing docs" in str(e.get("text")) for e in shown["timeline"])
        listed = json.loads(run_cli("incident", "list", "--alias", alias_name, "--url",
                                    node.url, "--json").stdout)
        assert [v["incident_id"] for v in listed["incidents"]] == [incident_id]
        report = run_cli("report", "--url", node.url, "--json")
        assert report.code == 0, report.stderr
        metrics = json.loads(report.stdout)["metrics"]
        assert metrics["docs_lost_per_incident"]["value"] is not None
        assert metrics["mean_time_to_detect"]["met"] is False  # detected months later
        bad = run_cli("incident", "start", alias_name, "--summary", "x", "--failed-at",
                      "yesterday", "--url", node.url)
        assert bad.code == 2 and "not a time" in bad.stderr
    finally:
        cluster.delete_doc(JOURNAL_INDEX, incident_doc_id(incident_id))
