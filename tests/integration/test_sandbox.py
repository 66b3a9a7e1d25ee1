import json
import os
import pwd
import socket
from pathlib import Path

import pytest

from indexshift import command, sandbox
from indexshift.errors import EnvironmentProblem, ExitCode
from tests.conftest import Node
from tests.helpers import run_cli

pytestmark = pytest.mark.cluster


@pytest.fixture
def sandbox_node(node: Node) -> Node:
    if node.sandbox_name is None:
        pytest.skip("the cluster under test was not started by the sandbox")
    return node


def test_status_and_logs_describe_the_running_sandbox(sandbox_node: Node) -> None:
    name = sandbox_node.sandbox_name
    assert name is not None
    status = command.sandbox_status(name)
    assert status["running"] and status["reachable"]
    assert status["engine"] == sandbox_node.engine and status["url"] == sandbox_node.url
    node0 = status["nodes"][0]
    assert sandbox.process_group_alive(node0["pid"])
    if os.geteuid() == 0:
        assert status["user"] == sandbox.SANDBOX_USER
        uid = pwd.getpwnam(sandbox.SANDBOX_USER).pw_uid
        members = sandbox.process_group_members(node0["pid"])
        assert members and all(
            int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]) == uid
            for pid in members
        ), "engine processes must not run as root"
    logs = command.sandbox_logs(name, lines=20)
    assert logs["logs"][0]["lines"]
    cli = run_cli("sandbox", "status", "--name", name, "--json")
    assert cli.code == 0 and json.loads(cli.stdout)["running"] is True


def test_up_again_reuses_the_running_sandbox(sandbox_node: Node) -> None:
    name = sandbox_node.sandbox_name
    assert name is not None
    before = command.sandbox_status(name)["nodes"][0]["pid"]
    report = command.sandbox_up(sandbox.UpRequest(
        engine=sandbox_node.engine, version=sandbox_node.version,  # type: ignore[arg-type]
        name=name, http_port=0))
    assert report["nodes"][0]["pid"] == before
    assert report["url"] == sandbox_node.url


def test_port_in_use_is_one_clear_line(sandbox_node: Node) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(EnvironmentProblem, match=f"port {port} on 127.0.0.1 is in use"):
            command.sandbox_up(sandbox.UpRequest(engine=sandbox_node.engine,  # type: ignore[arg-type]
                                                 name="pytest-port", http_port=port))
    assert command.sandbox_status("pytest-port")["running"] is False


def test_unknown_version_names_the_coordinates(sandbox_node: Node) -> None:
    result = run_cli("sandbox", "up", "--engine", "opensearch", "--version", "2.0.99",
                     "--name", "pytest-missing", "--port", "0")
    assert result.code == ExitCode.ENVIRONMENT
    assert "org.opensearch.distribution.integ-test-zip:opensearch:2.0.99:zip" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_of_a_sandbox_that_never_ran() -> None:
    result = run_cli("sandbox", "status", "--name", "pytest-never")
    assert result.code == ExitCode.CHECK_FAILED
    assert "not running" in result.stdout
