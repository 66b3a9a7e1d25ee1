"""Pure parts of the sandbox: releases, node settings, unpacking, port checks."""

import socket
import zipfile
from pathlib import Path

import pytest

from indexshift import sandbox
from indexshift.errors import BadInput


def test_default_releases_run_on_java_17() -> None:
    os_release = sandbox.find_release("opensearch", None)
    es_release = sandbox.find_release("elasticsearch", None)
    assert os_release.version.startswith("2.") and os_release.min_java <= 17
    assert es_release.version.startswith("8.") and es_release.min_java <= 17
    assert os_release.coordinates == \
        "org.opensearch.distribution.integ-test-zip:opensearch:2.19.6:zip"
    assert sandbox.find_release("opensearch", "3.9.0").min_java == 21
    with pytest.raises(BadInput):
        sandbox.find_release("solr", None)
    with pytest.raises(BadInput):
        sandbox.find_release("opensearch", "latest")


def _settings(engine: sandbox.EngineName, nodes: int) -> dict[str, object]:
    names = [f"node-{i}" for i in range(nodes)]
    return sandbox.node_settings(
        engine, cluster="c", node="node-0", http_port=9200, transport_port=9300,
        data=Path("/d"), logs=Path("/l"), repo=Path("/r"), all_nodes=names,
        all_transport=[9300 + i for i in range(nodes)],
    )


def test_single_node_settings_are_loopback_single_node() -> None:
    settings = _settings("opensearch", 1)
    assert settings["network.host"] == "127.0.0.1"
    assert settings["discovery.type"] == "single-node"
    assert settings["path.repo"] == ["/r"]
    assert "xpack.security.enabled" not in settings


def test_multi_node_settings_form_one_cluster() -> None:
    os3 = _settings("opensearch", 3)
    es3 = _settings("elasticsearch", 3)
    assert "discovery.type" not in os3
    assert os3["discovery.seed_hosts"] == ["127.0.0.1:9300", "127.0.0.1:9301", "127.0.0.1:9302"]
    assert os3["cluster.initial_cluster_manager_nodes"] == ["node-0", "node-1", "node-2"]
    assert es3["cluster.initial_master_nodes"] == ["node-0", "node-1", "node-2"]
    assert es3["xpack.security.enabled"] is False


def test_up_request_validation() -> None:
    assert sandbox.UpRequest(nodes=3).validated().nodes == 3
    for bad in (sandbox.UpRequest(nodes=0), sandbox.UpRequest(heap="lots"),
                sandbox.UpRequest(http_port=80)):
        with pytest.raises(BadInput):
            bad.validated()


def test_sandbox_names_are_checked() -> None:
    with pytest.raises(BadInput):
        sandbox.sandbox_dir("../etc")


def test_unzip_strips_top_folder_and_keeps_exec_bits(tmp_path: Path) -> None:
    archive = tmp_path / "e.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("engine-1.0/bin/engine")
        info.external_attr = 0o755 << 16
        zf.writestr(info, "#!/bin/sh\n")
        zf.writestr("engine-1.0/config/engine.yml", "a: 1\n")
        zf.writestr("engine-1.0/../escape", "no")
    sandbox._unzip_strip_top(archive, tmp_path / "out")
    assert (tmp_path / "out/bin/engine").stat().st_mode & 0o111
    assert (tmp_path / "out/config/engine.yml").read_text() == "a: 1\n"
    assert not (tmp_path / "escape").exists()


def test_maven_error_line_picks_the_failure() -> None:
    output = "[INFO] x\n\x1b[1;31m[ERROR]\x1b[m Failed to execute goal copy: Unable to find " \
             "artifact.\n[ERROR] more\n"
    assert sandbox._maven_error_line(output).startswith("Failed to execute goal")


def test_port_in_use_and_free_base() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert sandbox.port_in_use(port)
    base = sandbox.free_port_base(3)
    assert not any(sandbox.port_in_use(p) for p in range(base, base + 3))


def test_data_of_another_cluster_shape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "default"
    (root / "nodes").mkdir(parents=True)
    one_node = sandbox.find_release("opensearch", None)
    (root / sandbox.LAYOUT_FILE).write_text(
        f'{{"engine": "opensearch", "version": "{one_node.version}", "nodes": 1}}')
    sandbox._check_layout(root, one_node, 1)  # same shape: fine
    with pytest.raises(BadInput, match="1-node opensearch") as caught:
        sandbox._check_layout(root, one_node, 3)
    assert "--wipe" in str(caught.value)
    with pytest.raises(BadInput):
        sandbox._check_layout(root, sandbox.find_release("elasticsearch", None), 1)
