"""A real 3-node cluster on loopback: forms, survives losing a node, leaves nothing behind."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from indexshift import sandbox
from tests.helpers import run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _sandbox_java_pids(root: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "java" in cmdline and root in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(os.environ.get("INDEXSHIFT_TEST_URL") is not None,
                    reason="runs its own sandbox engines; INDEXSHIFT_TEST_URL means no local ones")
def test_three_nodes_form_a_cluster_survive_a_kill_and_stop_cleanly() -> None:
    name = "pytest-three"
    up = run_cli("sandbox", "up", "--nodes", "3", "--name", name, "--port", "0", "--json",
                 timeout=600)
    try:
        assert up.code == 0, up.stderr
        report = json.loads(up.stdout)
        assert len(report["nodes"]) == 3
        assert len({n["http_port"] for n in report["nodes"]}) == 3
        assert len({n["transport_port"] for n in report["nodes"]}) == 3
        info = json.loads(run_cli("info", "--url", report["url"], "--json").stdout)
        assert info["nodes"]["count"] == 3

        victim = report["nodes"][2]
        os.killpg(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while sandbox.process_group_alive(victim["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = 0
        while time.monotonic() < deadline:
            after = run_cli("info", "--url", report["url"], "--json")
            assert after.code == 0, after.stderr  # the cluster keeps answering
            survivors = json.loads(after.stdout)["nodes"]["count"]
            if survivors == 2:
                break
            time.sleep(1)
        assert survivors == 2
    finally:
        down = run_cli("sandbox", "down", "--name", name, "--wipe")
    assert down.code == 0, down.stderr
    for node in report["nodes"]:
        assert not sandbox.process_group_alive(node["pid"])
    assert _sandbox_java_pids(str(sandbox.sandbox_dir(name))) == []
